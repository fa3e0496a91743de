"""The token schedule with a fake clock and a fake identity server: no sockets, no sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.credentials import TokenConfig
from gateway.errors import CredentialsRejected, TokenEndpointError, TokenUnavailable
from gateway.metrics import build_metrics
from gateway.tokens import Grant, TokenPolicy, TokenSource
from tests.fakes import FakeClock


@dataclass
class FakeIdentity:
    """An identity server whose answers the test scripts; it records when it was asked."""

    clock: FakeClock
    lifetime: float = 60.0
    answer: Callable[[int], Exception | None] = lambda n: None
    calls: list[float] = field(default_factory=list)
    config: TokenConfig = field(
        default_factory=lambda: TokenConfig(
            client_id="c",
            client_secret=None,
            client_secret_file=None,
            scopes=("practice.get",),
            authority_url="http://127.0.0.1:9",
            token_url="http://127.0.0.1:9/token",
            timeout=1,
        )
    )

    @property
    def token_endpoint(self) -> str | None:
        return self.config.token_url

    async def request_token(self) -> Grant:
        self.calls.append(self.clock.now)
        await asyncio.sleep(0)  # let concurrent callers pile up behind the single flight
        failure = self.answer(len(self.calls))
        if failure is not None:
            raise failure
        return Grant(f"token-{len(self.calls)}", self.lifetime)


def make_source(
    identity: FakeIdentity, policy: TokenPolicy | None = None, seed: int = 7
) -> TokenSource:
    # These tests drive fetches themselves at fake times; the rate limit has its own tests.
    policy = dataclasses.replace(policy or TokenPolicy(), min_fetch_interval=0.0)
    return TokenSource(
        identity,
        build_metrics("test", CollectorRegistry()),
        policy,
        clock=identity.clock,
        rng=random.Random(seed),
    )


async def run_for(source: TokenSource, clock: FakeClock, seconds: float, step: float) -> None:
    """Drive the background loop's decisions over simulated time."""
    end = clock.now + seconds
    while clock.now < end:
        if source.due(clock.now):
            with contextlib.suppress(TokenEndpointError, CredentialsRejected):
                await source.refresh()
        clock.now += step


async def test_ten_minutes_of_60s_tokens_refresh_every_48s_and_never_expire() -> None:
    """60 s tokens over 10 minutes: a refresh every 45-51 s (about 48), always usable."""
    clock = FakeClock()
    identity = FakeIdentity(clock, lifetime=60)
    source = make_source(identity)
    end = clock.now + 600
    while clock.now < end:
        if source.due(clock.now):
            await source.refresh()
        assert source.has_usable_token(), f"no usable token at t={clock.now}"
        clock.now += 0.1
    gaps = [b - a for a, b in zip(identity.calls, identity.calls[1:], strict=False)]
    print(f"refresh intervals (s): {[round(g, 1) for g in gaps]}")
    assert len(identity.calls) in {12, 13, 14}
    assert all(45 <= gap <= 51.1 for gap in gaps)
    assert 46 <= statistics.mean(gaps) <= 50


async def test_replicas_drift_apart() -> None:
    """Two replicas started together pick different refresh times (jitter)."""
    times = []
    for seed in (1, 2):
        clock = FakeClock()
        source = make_source(FakeIdentity(clock), seed=seed)
        await source.refresh()
        times.append(source.status()["next_refresh_in_seconds"])
    assert times[0] != times[1]
    assert all(45 <= t <= 51 for t in times)


async def test_identity_down_backs_off_with_capped_exponential_full_jitter() -> None:
    """Every token request fails: retries spread out up to the cap, never a tight loop."""
    clock = FakeClock()
    policy = TokenPolicy(retry_base=1, retry_cap=60)
    identity = FakeIdentity(clock, answer=lambda n: TokenEndpointError("unreachable", "down"))
    source = make_source(identity, policy)
    await run_for(source, clock, 600, 0.05)
    gaps = [b - a for a, b in zip(identity.calls, identity.calls[1:], strict=False)]
    print(f"retry schedule (s): {[round(g, 2) for g in gaps]}")
    for failures, gap in enumerate(gaps, start=1):
        assert policy.min_retry - 0.05 <= gap <= policy.retry_ceiling(failures, False) + 0.05
    # 600 s against a 60 s cap with full jitter: on average one try per 30 s once capped.
    assert 10 <= len(identity.calls) <= 40
    assert not source.has_usable_token()


async def test_requests_fail_fast_while_backing_off() -> None:
    """No usable token and a retry scheduled: get() answers 503 at once, no extra request."""
    clock = FakeClock()
    identity = FakeIdentity(clock, answer=lambda n: TokenEndpointError("timeout", "slow"))
    source = make_source(identity)
    with pytest.raises(TokenUnavailable):
        await source.get()
    assert len(identity.calls) == 1
    for _ in range(100):
        with pytest.raises(TokenUnavailable) as caught:
            await source.get()
    assert len(identity.calls) == 1
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 1


async def test_valid_token_served_while_refresh_fails_then_503() -> None:
    """Refreshes failing: the old token is served until its margin, then token_unavailable."""
    clock = FakeClock()
    identity = FakeIdentity(
        clock, answer=lambda n: None if n == 1 else TokenEndpointError("server_error", "500")
    )
    source = make_source(identity)
    first = await source.get()
    usable_until = clock.now + 60 - 6  # a 60 s token: the last tenth is not used
    while clock.now < usable_until - 0.1:
        if source.due(clock.now):
            with pytest.raises(TokenEndpointError):
                await source.refresh()
        assert await source.get() == first
        clock.now += 0.1
    clock.now = usable_until
    with pytest.raises(TokenUnavailable):
        await source.get()
    assert len(identity.calls) > 1


async def test_recovers_when_identity_comes_back() -> None:
    """After failures, the first retry that succeeds restores a token and clears the error."""
    clock = FakeClock()
    healthy = {"up": False}
    identity = FakeIdentity(
        clock,
        answer=lambda n: None if healthy["up"] else TokenEndpointError("unreachable", "down"),
    )
    source = make_source(identity, TokenPolicy(retry_base=1, retry_cap=8))
    await run_for(source, clock, 30, 0.05)
    assert not source.has_usable_token()
    healthy["up"] = True
    await run_for(source, clock, 9, 0.05)
    assert source.has_usable_token()
    assert source.last_error is None
    assert source.status()["consecutive_failures"] == 0


async def test_refused_credentials_back_off_for_long() -> None:
    """invalid_client is a configuration problem: the next try waits up to 30 s, not 1 s."""
    clock = FakeClock()
    identity = FakeIdentity(clock, answer=lambda n: CredentialsRejected("invalid_client", None))
    source = make_source(identity)
    await run_for(source, clock, 0.1, 0.05)
    retry_in = source.status()["retry_in_seconds"]
    assert source.status()["credentials_refused"] is True
    assert 0.5 <= retry_in <= 30
    with pytest.raises(TokenUnavailable, match="refused"):
        await source.get()
    assert len(identity.calls) == 1


async def test_cold_start_single_flight() -> None:
    """1,000 concurrent requests with no token cause exactly one token request."""
    clock = FakeClock()
    identity = FakeIdentity(clock)
    source = make_source(identity)
    tokens = await asyncio.gather(*(source.get() for _ in range(1000)))
    assert set(tokens) == {"token-1"}
    assert len(identity.calls) == 1


async def test_burst_of_401s_causes_one_refresh() -> None:
    """Many requests seeing 401 on the same token: one refresh, all get the new token."""
    clock = FakeClock()
    identity = FakeIdentity(clock)
    source = make_source(identity)
    old = await source.get()
    replacements = await asyncio.gather(*(source.replace(old) for _ in range(200)))
    assert set(replacements) == {"token-2"}
    assert len(identity.calls) == 2
    # Late 401s for the old token reuse the replacement without another request.
    assert await source.replace(old) == "token-2"
    assert len(identity.calls) == 2


async def test_401_on_a_fresh_token_stands() -> None:
    """EXACT refusing a token minted moments ago: no refresh loop, the 401 is returned."""
    clock = FakeClock()
    identity = FakeIdentity(clock)
    source = make_source(identity)
    first = await source.get()
    second = await source.replace(first)
    assert second == "token-2"
    assert await source.replace(second) is None  # within 5 s of the last 401 refresh
    clock.now += 5
    assert await source.replace(second) == "token-3"


async def test_changed_secret_file_retries_at_once(tmp_path: Path) -> None:
    """Refused credentials, then the mounted secret is replaced: the retry happens now."""
    secret = tmp_path / "secret"
    secret.write_text("old")
    clock = FakeClock()
    identity = FakeIdentity(clock, answer=lambda n: CredentialsRejected("invalid_client", None))
    identity.config = dataclasses.replace(identity.config, client_secret_file=secret)
    source = make_source(identity)
    await run_for(source, clock, 0.1, 0.05)
    assert not source.due(clock.now)
    assert source.next_wakeup(clock.now) <= source.policy.secret_poll
    assert not source.secret_file_changed()
    replacement = tmp_path / "secret.new"
    replacement.write_text("rotated")
    replacement.replace(secret)  # a new inode, as Kubernetes' atomic symlink swap gives
    assert source.secret_file_changed()
    assert source.due(clock.now)


async def test_401_while_identity_is_down_is_a_503_not_a_401() -> None:
    """The token EXACT refused cannot be replaced now: token_unavailable, never a bare 401."""
    clock = FakeClock()
    identity = FakeIdentity(
        clock, answer=lambda n: None if n == 1 else TokenEndpointError("unreachable", "down")
    )
    source = make_source(identity)
    first = await source.get()
    with pytest.raises(TokenUnavailable):
        await source.replace(first)
    clock.now += 1  # still inside the 5 s window, and still no token
    with pytest.raises(TokenUnavailable):
        await source.replace(first)
